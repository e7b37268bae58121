"""Which compiled kernels this process has, where they came from, and what
happens where there are none.

The compiled kernels are optional: without them every optimizer runs on its
``foreach`` or for-loop path. They come from one of two places:

* **the install** (``pip install --no-build-isolation .``): ``lossopt_cuda._C``
  holds the operator schemas, the advance ops and the CUDA kernels; the CPU
  kernels are built once per instruction set (``_cpu_default``, ``_cpu_avx2``,
  ``_cpu_avx512``) and the one matching torch's own CPU capability
  (``torch.backends.cpu.get_cpu_capability()``, which honours
  ``ATEN_CPU_CAPABILITY``) is imported. They are loaded at import, unless
  they were built for another torch (the build records its version);
* **the build on first use** (:mod:`lossopt_cuda._jit`): where the install
  built none, the first step that would use the CPU kernels compiles them into
  a cache shared by processes, unless ``LOSSOPT_JIT=0``.

Where neither gives kernels, ``fused=None`` falls back to ``foreach`` with one
warning per process saying why, and ``fused=True`` raises with the same words.
"""

from __future__ import annotations

import importlib
import json
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import _cache, _jit, _nvrtc
from ._skips import user_stacklevel

#: Parameter dtypes each device's kernels take.
FUSED_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
}

# Best first; each is tried only where torch itself runs that capability.
_CPU_MODULES = {"AVX512": ("avx512", "avx2", "default"), "AVX2": ("avx2", "default")}
_RECORD = Path(__file__).with_name("_build_record.json")  # written by setup.py
_HOW_TO_GET = (
    "To get the kernels: install a C++ compiler and let the first step build them, or build "
    "them at install (`pip install --no-build-isolation .`) or ahead of time "
    "(`python -m lossopt_cuda.build`)."
)


def _installed_modules() -> Tuple[Optional[ModuleType], Optional[ModuleType], Optional[str], Optional[str]]:
    """Import the install's modules: (``_C``, the CPU kernel module, its
    instruction set, why there are none)."""
    if _RECORD.exists():
        try:
            built_for = json.loads(_RECORD.read_text(encoding="utf-8"))["torch_version"]
        except (OSError, ValueError, KeyError) as err:
            return None, None, None, f"the install's build record {_RECORD} is unreadable ({err})"
        if built_for != torch.__version__:
            return None, None, None, (f"the installed kernels were built for torch {built_for}, "
                                      f"this is torch {torch.__version__}")
    try:  # importing it registers the torch.ops.lossopt operators
        c_module = importlib.import_module(f"{__package__}._C")
    except ImportError as err:
        missing = isinstance(err, ModuleNotFoundError) and err.name == f"{__package__}._C"
        return None, None, None, ("the install built no kernels" if missing
                                  else f"the installed kernels do not load ({err})")
    capability = torch.backends.cpu.get_cpu_capability()
    for isa in _CPU_MODULES.get(capability, ("default",)):
        try:
            return c_module, importlib.import_module(f"{__package__}._cpu_{isa}"), isa.upper(), None
        except ImportError:
            continue
    return c_module, None, None, "the install built no CPU kernels for this CPU"


class _Kernels:
    """What this process has loaded; changes only when a build on first use
    succeeds (under ``lock``)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        c_module, cpu_module, isa, why = _installed_modules()
        self.ops = c_module is not None  # the torch.ops.lossopt schemas are registered
        self.info: Dict[str, Any] = {
            "cpu_kernels": cpu_module is not None,
            "cpu_isa": isa,
            "cpu_source": "install" if cpu_module is not None else None,
            "cuda": False,
            "cuda_version": None,
            "cuda_archs": [],
            "cuda_source": None,
            "torch_version": torch.__version__,
            "cache_dir": str(_cache.root()),
        }
        if self.ops:
            self._read_op_info()
        self.install_why = why  # why the install gave no CPU kernels
        # A build on first use is tried once per process and device type at
        # most, and only where the install's modules gave no kernels.
        self.cpu_tried = c_module is not None
        self.cuda_tried = self.info["cuda"]
        # Why a device type has no kernels (None: it has them, or may still get them).
        self.why: Dict[str, Optional[str]] = {"cpu": why if self.cpu_tried else None, "cuda": None}
        self.warned: set = set()
        self.on_load: List[Callable[[], None]] = []

    def _read_op_info(self) -> None:
        fields = dict(item.split("=", 1) for item in torch.ops.lossopt.build_info().split(";"))
        if fields.get("cuda") == "1":
            self.info.update(cuda=True, cuda_version=fields.get("cuda_version"), cuda_source="install",
                             cuda_archs=[a for a in fields.get("cuda_archs", "").split(",") if a])

    def build_cpu(self, asked: bool = False) -> None:
        """The build on first use of the CPU kernels (and the operator
        schemas), once per process (``asked``: by ``python -m
        lossopt_cuda.build``, whatever LOSSOPT_JIT says)."""
        with self.lock:
            if self.cpu_tried:
                return
            self.cpu_tried = True
            try:
                # LOSSOPT_JIT=0 still loads what `python -m lossopt_cuda.build` cached.
                isa = _jit.load_cpu_kernels(build=asked or _jit.enabled())
            except _jit.BuildError as err:
                self.why["cpu"] = f"{self.install_why}, and {err}"
                return
            self.ops = True
            self.info.update(cpu_kernels=True, cpu_isa=isa, cpu_source="jit")
            self.why["cpu"] = None
        for hook in self.on_load:
            hook()

    def build_cuda(self, archs: Optional[Sequence[str]] = None, asked: bool = False) -> None:
        """The build on first use of the CUDA kernels with NVRTC, once per
        process: for ``archs`` (``"9.0"``...), else the visible GPUs'."""
        with self.lock:
            if self.cuda_tried:
                return
            self.cuda_tried = True
            if torch.version.cuda is None:
                self.why["cuda"] = f"torch {torch.__version__} is not a CUDA build"
                return
            self.build_cpu(asked)  # the schemas the CUDA ops implement
            if not self.ops:
                self.why["cuda"] = f"the operator schemas could not be built: {self.why['cpu']}"
                return
            gpus = _visible_archs()
            if archs is None and not gpus:
                self.why["cuda"] = "no GPU is visible"
                return
            try:
                toolkit = _nvrtc.find_toolkit()
                allow = asked or _jit.enabled()
                _jit.load_cuda_host(toolkit, build=allow)
                wanted = [_nvrtc.normal_arch(a) for a in (archs if archs is not None else gpus)]
                cubins = _nvrtc.compile_cubins(toolkit, wanted, build=allow)
                here = {_nvrtc.arch_number(g) for g in gpus}
                for arch, path in cubins.items():
                    if _nvrtc.arch_number(arch) in here:  # loading needs a GPU of that architecture
                        torch.ops.lossopt.nvrtc_add_cubin(_nvrtc.arch_number(arch), str(path))
            except _jit.BuildError as err:
                self.why["cuda"] = f"the install built no CUDA kernels, and {err}"
                return
            self.info.update(cuda=True, cuda_version=torch.version.cuda, cuda_source="nvrtc",
                             cuda_archs=sorted(cubins))
            self.why["cuda"] = None


def _visible_archs() -> List[str]:
    """The compute capabilities of the visible GPUs, as ``"9.0"``."""
    if not torch.cuda.is_available():
        return []
    caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return sorted(f"{major}.{minor}" for major, minor in caps)


_STATE = _Kernels()


def build_info() -> Dict[str, Any]:
    """Describe the compiled kernels this process has.

    Keys: ``cpu_kernels`` (bool), ``cpu_isa`` (the instruction set the loaded
    CPU kernels were compiled for, or None), ``cpu_source`` (``"install"``,
    ``"jit"``: built on first use, or None), ``cuda`` (bool), ``cuda_version``
    (str or None), ``cuda_archs`` (list such as ``["8.0", "9.0"]``),
    ``cuda_source`` (``"install"``, ``"nvrtc"``: compiled on first use, or
    None), ``torch_version`` (the torch this process runs), ``cache_dir``
    (where builds on first use go), ``cpu_missing`` and ``cuda_missing`` (why
    a device type has no kernels, or None). An install without kernels reports
    none until the first step builds them. Returns a fresh dict each call.
    """
    info = dict(_STATE.info)
    info["cuda_archs"] = list(info["cuda_archs"])
    info["cpu_missing"] = None if info["cpu_kernels"] else (_STATE.why["cpu"] or _not_yet())
    info["cuda_missing"] = None if info["cuda"] else (_STATE.why["cuda"] or _cuda_not_yet())
    return info


def _cuda_not_yet() -> str:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    return ("the install built no CUDA kernels; the first step on a GPU compiles them with NVRTC"
            if _jit.enabled() else "the install built no CUDA kernels, and building them on first "
            "use is off (LOSSOPT_JIT=0)")


def _not_yet() -> str:
    if _jit.enabled():
        return f"{_STATE.install_why}; the first step that uses them compiles them"
    return f"{_STATE.install_why}, and building them on first use is off (LOSSOPT_JIT=0)"


def ops_loaded() -> bool:
    """Whether the torch.ops.lossopt operators exist in this process."""
    return _STATE.ops


def when_loaded(hook: Callable[[], None]) -> None:
    """Run ``hook`` now if the operators exist, else once a build on first use loads them."""
    if _STATE.ops:
        hook()
    else:
        _STATE.on_load.append(hook)


@torch.compiler.disable
def _build_once(device_type: str) -> None:
    # Outside any traced graph: a build runs a compiler and loads a library.
    if device_type == "cpu":
        _STATE.build_cpu()
    else:
        _STATE.build_cuda()


def kernels_on(device_type: str) -> bool:
    """Whether compiled kernels run on this device type; the first call for
    the CPU or a GPU may build them (see the module's docstring)."""
    if device_type == "cpu":
        if not _STATE.cpu_tried:
            _build_once("cpu")
        return _STATE.info["cpu_kernels"]
    if device_type == "cuda":
        if not _STATE.cuda_tried:
            _build_once("cuda")
        return _STATE.info["cuda"]
    return False


def build_now(cuda_archs: Optional[Sequence[str]] = None) -> Dict[str, bool]:
    """Build (or load from the cache) what this machine can use now, whatever
    LOSSOPT_JIT says: the CPU kernels, and the CUDA kernels for ``cuda_archs``
    (none: for the visible GPUs, if any). Returns {device type: has kernels}."""
    _STATE.build_cpu(asked=True)
    if cuda_archs is not None or _visible_archs():
        _STATE.build_cuda(cuda_archs, asked=True)
    return {"cpu": _STATE.info["cpu_kernels"], "cuda": _STATE.info["cuda"]}


def fused_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a compiled kernel can step parameters of this device and dtype."""
    return kernels_on(device.type) and dtype in FUSED_DTYPES.get(device.type, ())


#: Devices whose kernels write bfloat16 state and stochastically rounded
#: parameters (csrc/rounding.h); elsewhere rounded buckets take the foreach path.
ROUNDING_DEVICES = ("cpu", "cuda")


def rounding_supported(device: torch.device) -> bool:
    """Whether the compiled kernels of this device type round stochastically."""
    return device.type in ROUNDING_DEVICES


def missing(device_type: str) -> str:
    """Why a device type has no kernels, and how to get them."""
    if device_type == "cpu":
        why = _STATE.why["cpu"] or _not_yet()
    elif device_type == "cuda":
        why = _STATE.why["cuda"] or _cuda_not_yet()
        return (f"{why}. To get them: let the first step on a GPU compile them with NVRTC (from "
                "torch's CUDA wheels), or compile them ahead of time (`python -m lossopt_cuda.build "
                "--cuda-arch 9.0`) or at install (`pip install --no-build-isolation .` with nvcc).")
    else:
        return f"there are no compiled kernels for {device_type} devices"
    return f"{why}. {_HOW_TO_GET}"


def warn_fallback(device_type: str, owner: str) -> None:
    """One warning per process and device type: no kernels, so foreach."""
    if device_type in _STATE.warned or device_type not in FUSED_DTYPES:
        return
    _STATE.warned.add(device_type)
    warnings.warn(f"{owner}: no compiled kernels for {device_type}, running the foreach path "
                  f"instead: {missing(device_type)}", RuntimeWarning, stacklevel=user_stacklevel())


def require_kernels(owner: str) -> None:
    """Raise a clear error when ``fused=True`` is asked where no kernels exist
    at all (building the CPU kernels first where they may be built)."""
    if not (kernels_on("cpu") or kernels_on("cuda")):
        raise RuntimeError(f"{owner}(fused=True): this process has no compiled kernels: CPU: "
                           f"{missing('cpu')} CUDA: {missing('cuda')} Or use fused=None to fall "
                           "back to the foreach path.")

