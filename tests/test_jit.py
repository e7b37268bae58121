"""The kernels on a plain install: built on first use, cached, and always said.

These tests install this checkout as ``pip install .`` does in pip's default
isolated build environment (where torch is absent, so no kernels are compiled:
``LOSSOPT_BUILD=none`` stands for that here, to stay offline and fast), into a
folder of its own, and run fresh Python processes on it that see torch but not
the editable install of the test run. Each process gets its own cache folder
(``LOSSOPT_CACHE_DIR``) unless a test shares one on purpose.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lossopt_cuda
from lossopt_cuda import _cache, _jit, _kernels, _nvrtc

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler")

# Steps every rule on the fused path (fused=None, the default, and fused=True)
# and on foreach, and reports what the process saw as JSON.
WORKER = textwrap.dedent(
    """
    import json, sys, time, warnings
    start = time.perf_counter()
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import torch
        import lossopt_cuda
        from lossopt_cuda import AdaLo, AdaLoss, AdamL
        report = {"info_at_import": lossopt_cuda.build_info(), "max_diff": 0.0, "fused_true": "ok"}
        for cls in (AdaLo, AdamL, AdaLoss, AdaLo):
            torch.manual_seed(0)
            init, grads = torch.randn(1001), [torch.randn(1001) for _ in range(3)]
            finals = []
            for flags in ({}, {"foreach": True}):
                p = torch.nn.Parameter(init.clone())
                opt = cls([p], **flags)
                for k, g in enumerate(grads):
                    p.grad = g.clone()
                    opt.step(loss=torch.tensor(2.0 / (k + 1)))
                finals.append(p.detach().clone())
            report["max_diff"] = max(report["max_diff"], (finals[0] - finals[1]).abs().max().item())
        try:
            p = torch.nn.Parameter(torch.randn(5))
            p.grad = torch.randn(5)
            AdaLoss([p], fused=True).step(loss=torch.tensor(1.0))
        except RuntimeError as err:
            report["fused_true"] = str(err)
        report["info"] = lossopt_cuda.build_info()
        try:
            report["kernel_registered"] = torch._C._dispatch_has_kernel_for_dispatch_key("lossopt::adalo_", "CPU")
        except RuntimeError:  # the operator does not exist
            report["kernel_registered"] = False
    report["warnings"] = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    report["seconds"] = time.perf_counter() - start
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """(python, environment) of a plain install of this checkout."""
    root = tmp_path_factory.mktemp("plain")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.so", "_build_record.json", "__pycache__", ".hypothesis",
        ".pytest_cache", "results", "*.egg-info"))
    target = root / "site"
    env = {**os.environ, "LOSSOPT_BUILD": "none"}
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, env=env, cwd=root)
    assert (target / "lossopt_cuda" / "_csrc" / "cpu" / "kernels.cpp").is_file(), "csrc not shipped"
    assert not list((target / "lossopt_cuda").glob("*.so"))
    # A Python that sees torch (and filelock, ninja) but not this test run's
    # editable install: the sites' .pth files are not processed this way.
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    sites = subprocess.run([str(venv / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    Path(sites, "torch_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("LOSSOPT_")}
    run_env["PYTHONPATH"] = str(target)
    (root / "worker.py").write_text(WORKER)
    return venv / "bin" / "python", run_env, root


def start(plain, cache: Path, **env):
    python, run_env, root = plain
    return subprocess.Popen([str(python), str(root / "worker.py")], cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**run_env, "LOSSOPT_CACHE_DIR": str(cache), **env})


def finish(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


@pytest.fixture(scope="module")
def shared_cache(plain, tmp_path_factory):
    """A cache built by two processes started together on an empty cache."""
    cache = tmp_path_factory.mktemp("cache")
    procs = [start(plain, cache), start(plain, cache)]
    results = [finish(p) for p in procs]
    return cache, results


def test_first_use_builds_once_for_processes_started_together(shared_cache):
    cache, results = shared_cache
    stderr = "".join(err for _, err in results)
    assert stderr.count("compiling the CPU kernels") == 1, stderr
    assert len(list(cache.glob("cpu-*/built.json"))) == 1
    for report, _ in results:
        assert not report["info_at_import"]["cpu_kernels"]
        assert "first step" in report["info_at_import"]["cpu_missing"]
        assert report["info"]["cpu_kernels"] and report["info"]["cpu_source"] == "jit"
        assert report["info"]["cpu_isa"] in ("DEFAULT", "AVX2", "AVX512")
        assert report["kernel_registered"] and report["fused_true"] == "ok"
        assert report["warnings"] == []
        assert report["max_diff"] < 1e-5  # the fused kernels agree with foreach


def test_a_later_process_loads_from_the_cache(plain, shared_cache):
    cache, _ = shared_cache
    report, err = finish(start(plain, cache))
    assert "compiling" not in err, err
    assert report["info"]["cpu_source"] == "jit" and report["fused_true"] == "ok"
    print(f"a later process, cache warm: {report['seconds']:.2f} s in the process")


def test_jit_off_falls_back_to_foreach_with_one_warning(plain, tmp_path):
    report, err = finish(start(plain, tmp_path / "empty", LOSSOPT_JIT="0"))
    assert "compiling" not in err
    assert not report["info"]["cpu_kernels"] and not report["kernel_registered"]
    assert len(report["warnings"]) == 1, report["warnings"]
    assert "LOSSOPT_JIT=0" in report["warnings"][0] and "foreach" in report["warnings"][0]
    assert "fused=True" in report["fused_true"] and "LOSSOPT_JIT=0" in report["fused_true"]
    assert report["max_diff"] == 0.0  # both ran foreach
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").iterdir())


def test_jit_off_still_loads_what_was_built_ahead_of_time(plain, shared_cache):
    cache, _ = shared_cache
    report, err = finish(start(plain, cache, LOSSOPT_JIT="0"))
    assert report["info"]["cpu_source"] == "jit" and report["warnings"] == []


def test_build_command_builds_and_prints_build_info(plain, shared_cache):
    cache, _ = shared_cache
    python, run_env, root = plain
    done = subprocess.run([str(python), "-m", "lossopt_cuda.build"], capture_output=True, text=True,
                          env={**run_env, "LOSSOPT_CACHE_DIR": str(cache), "LOSSOPT_JIT": "0"}, cwd=root)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cpu_source"] == "jit"


def test_a_broken_cache_entry_is_built_again(plain, shared_cache, tmp_path):
    cache, _ = shared_cache
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    (library,) = copy.glob("cpu-*/lossopt_cpu*")
    library.write_bytes(b"not a library")
    report, err = finish(start(plain, copy))
    assert "do not load" in err and err.count("compiling the CPU kernels") == 1, err
    assert report["info"]["cpu_source"] == "jit" and report["warnings"] == []


def test_a_failed_build_is_said_once_with_its_first_error(plain, tmp_path):
    compiler = tmp_path / "broken-c++"
    # Answers torch's version probe as the real compiler does, fails every compile.
    compiler.write_text(
        "#!/bin/sh\ncase \" $* \" in *' -c '*) echo 'kernels.cpp:1:1: error: planted compiler failure' >&2; "
        "exit 1;; esac\nexec c++ \"$@\"\n")
    compiler.chmod(0o755)
    report, err = finish(start(plain, tmp_path / "cache", CXX=str(compiler)))
    assert len(report["warnings"]) == 1, report["warnings"]
    for message in (report["warnings"][0], report["fused_true"], report["info"]["cpu_missing"]):
        assert "planted compiler failure" in message and "build.log" in message, message
    assert not report["info"]["cpu_kernels"]


def test_kernels_built_for_another_torch_are_not_loaded(plain, shared_cache, tmp_path):
    python, run_env, root = plain
    site_dir = tmp_path / "site"
    shutil.copytree(Path(run_env["PYTHONPATH"]), site_dir)
    package = site_dir / "lossopt_cuda"
    (package / "_build_record.json").write_text(json.dumps({"torch_version": "0.0.0"}))
    # Loading this would fail loudly; it must not even be tried.
    (package / "_C.so").write_bytes(b"built for another torch")
    cache, _ = shared_cache
    report, err = finish(start((python, {**run_env, "PYTHONPATH": str(site_dir)}, root), cache))
    assert "built for torch 0.0.0" in report["info_at_import"]["cpu_missing"]
    assert report["info"]["cpu_source"] == "jit" and report["warnings"] == []


# ------------------------------------------------------------------ in-process


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LOSSOPT_CACHE_DIR", str(tmp_path / "c"))
    assert _cache.root() == tmp_path / "c"
    monkeypatch.delenv("LOSSOPT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert _cache.root() == tmp_path / "x" / "lossopt_cuda"


def test_the_cache_key_changes_with_the_sources_and_the_isa(tmp_path):
    src = tmp_path / "csrc"
    shutil.copytree(REPO / "csrc", src)
    first = _jit.cpu_entry(src, "AVX2")
    assert _jit.cpu_entry(src, "AVX2") == first
    assert _jit.cpu_entry(src, "DEFAULT") != first
    header = src / "rules" / "adalo.h"
    header.write_text(header.read_text() + "\n// edited\n")
    assert _jit.cpu_entry(src, "AVX2") != first


@pytest.mark.parametrize("output, first", [
    ("FAILED: a.o\nc++ -c a.cpp\na.cpp:3:5: error: 'x' was not declared\nninja: build stopped", "a.cpp:3:5: error: 'x' was not declared"),
    ("Error building extension 'k': [1/2] c++ -c x.cpp\nx.cpp:1:2: fatal error: y.h: No such file", "x.cpp:1:2: fatal error: y.h: No such file"),
    ("RuntimeError: Error building extension 'k': [1/2] c++ -c x.cpp\ny.h:148:10: fatal error: crt/host_defines.h: No such file", "y.h:148:10: fatal error: crt/host_defines.h: No such file"),
    ("t.cu(67): error: identifier \"x\" is undefined", "t.cu(67): error: identifier \"x\" is undefined"),
    ("Error building extension 'k'", "Error building extension 'k'"),
    ("", "no output"),
])
def test_first_error_line(output, first):
    assert _cache.first_error(output) == first


# ------------------------------------------------------------------ NVRTC, without a GPU


@pytest.mark.parametrize("arch, name, number", [("8.0", "sm_80", 80), ("9.0", "sm_90", 90),
                                                ("90", "sm_90", 90), ("10.0", "sm_100", 100),
                                                ("9.0a", "sm_90a", 90), ("8.6+PTX", "sm_86", 86)])
def test_cuda_architecture_names(arch, name, number):
    assert _nvrtc.arch_name(arch) == name and _nvrtc.arch_number(arch) == number
    assert _nvrtc.normal_arch(arch) == f"{number // 10}.{number % 10}" + ("a" if arch.endswith("a") else "")


@pytest.mark.parametrize("arch", ["", "sm_90", "nine", "9.0.1"])
def test_bad_cuda_architectures_are_refused(arch):
    with pytest.raises(ValueError, match="not a CUDA architecture"):
        _nvrtc.arch_name(arch)


@pytest.mark.skipif(torch.version.cuda is not None, reason="torch is a CUDA build here")
def test_a_cpu_build_of_torch_says_why_it_has_no_cuda_kernels():
    with pytest.raises(_cache.BuildError, match="not a CUDA build"):
        _nvrtc.find_toolkit()
    info = lossopt_cuda.build_info()
    assert not info["cuda"] and "not a CUDA build" in info["cuda_missing"]
    assert not _kernels.kernels_on("cuda")


def test_build_command_refuses_a_bad_architecture():
    done = subprocess.run([sys.executable, "-m", "lossopt_cuda.build", "--cuda-arch", "nine"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "not a CUDA architecture" in done.stderr
