"""Instructions per parameter element of one fused CPU step, counted, not timed.

Runs itself under valgrind's callgrind (which counts the same on a busy
machine), one thread, parameters of ``--numel`` elements (float32, or bfloat16 where a
case says so), and reads:

* the instructions executed inside each optimizer's update op per step
  (inclusive, averaged over the steps), divided by the elements: AdaLo, AdamL,
  AdaLoss (with and without momentum) on the fused path, against
  ``torch.optim.Adam(fused=True)`` and ``AdamW(fused=True)``; and with
  bfloat16 parameters: AdaLo and AdamL with bfloat16 state and stochastically
  rounded parameters, and the three rules and Adam plain, which counts what
  the rounding's hash costs. The per-group
  scalar step (``lossopt::<rule>_advance``, a few hundred instructions per
  group) and Python are outside the op and do not grow with the elements;
* the floating-point arithmetic those instructions did: every executed
  instruction's address is looked up in the disassembly of its library
  (``objdump``), classified (multiply, fused multiply-add, add/subtract,
  divide, square root, reciprocal) and weighted by its vector lanes, so that
  the counts are per element operations as the CPU executed them.

    python benchmarks/instruction_counts.py [--numel 1048576] [--steps 3] [--out FILE.json]

Needs valgrind and objdump (binutils). Takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

# name -> (kind, class, constructor kwargs, the op each runs (the toggle
# pattern), parameter dtype). BF16_STATE: bfloat16 state and stochastically
# rounded bfloat16 parameters.
BF16_STATE = dict(state_dtype="bfloat16", stochastic_rounding=True, rounding_seed=1)
_ADALO, _ADAML = "lossopt::cpu::*adalo(*", "lossopt::cpu::*adaml(*"
_ADAM = "at::native::_fused_adam_kernel_cpu_*"
CASES = {
    "AdaLo": ("lossopt", "AdaLo", dict(), _ADALO, "float32"),
    "AdamL": ("lossopt", "AdamL", dict(lr=1e-3), _ADAML, "float32"),
    "AdaLoss": ("lossopt", "AdaLoss", dict(lr=0.1), "lossopt::cpu::*adaloss(*", "float32"),
    "AdaLoss+momentum": ("lossopt", "AdaLoss", dict(lr=0.1, momentum=0.9), "lossopt::cpu::*adaloss(*", "float32"),
    "Adam(fused=True)": ("torch", "Adam", dict(lr=1e-3), _ADAM, "float32"),
    "AdamW(fused=True)": ("torch", "AdamW", dict(lr=1e-3, weight_decay=1e-2),
                          "at::native::_fused_adamw_kernel_cpu_*", "float32"),
    "AdaLo bf16": ("lossopt", "AdaLo", dict(), _ADALO, "bfloat16"),
    "AdaLo bf16+state": ("lossopt", "AdaLo", BF16_STATE, _ADALO, "bfloat16"),
    "AdamL bf16": ("lossopt", "AdamL", dict(lr=1e-3), _ADAML, "bfloat16"),
    "AdamL bf16+state": ("lossopt", "AdamL", dict(lr=1e-3, **BF16_STATE), _ADAML, "bfloat16"),
    "Adam(fused) bf16": ("torch", "Adam", dict(lr=1e-3), _ADAM, "bfloat16"),
}

# ------------------------------------------------------------------ child: the steps


def child(case: str, numel: int, steps: int) -> None:
    import torch

    torch.set_num_threads(1)
    import lossopt_cuda

    kind, cls_name, kwargs, _, dtype_name = CASES[case]
    dtype = getattr(torch, dtype_name)
    kwargs = {k: getattr(torch, v) if k == "state_dtype" else v for k, v in kwargs.items()}
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(numel, generator=gen).to(dtype).requires_grad_()
    p.grad = (torch.randn(numel, generator=gen) * 1e-2).to(dtype)
    if kind == "lossopt":
        opt = getattr(lossopt_cuda, cls_name)([p], fused=True, **kwargs)
        loss = torch.tensor(0.7)
        for _ in range(steps):
            opt.step(loss=loss)
    else:
        opt = getattr(torch.optim, cls_name)([p], fused=True, **kwargs)
        for _ in range(steps):
            opt.step()


# ------------------------------------------------------------------ parent: count


def run_callgrind(case: str, numel: int, steps: int, tmp: Path) -> Path:
    out = tmp / f"callgrind.{re.sub(r'[^A-Za-z]+', '_', case)}"
    cmd = ["valgrind", "--tool=callgrind", "--dump-instr=yes", "--dump-line=no",
           f"--callgrind-out-file={out}", f"--toggle-collect={CASES[case][3]}",
           sys.executable, __file__, "--child", case, "--numel", str(numel), "--steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{case}: callgrind failed:\n{r.stderr[-3000:]}")
    return out


def parse_callgrind(path: Path) -> Dict[str, Dict[int, int]]:
    """Self cost (Ir) per instruction address, per object file. The format
    (valgrind's callgrind format, positions "instr"): compressed names
    "(id) name", relative addresses "+n"/"-n", "*" for the same, and
    "calls=" lines whose next cost line is a call's inclusive cost (skipped)."""
    names: Dict[str, Dict[str, str]] = {"ob": {}, "fn": {}, "fl": {}}
    cost: Dict[str, Dict[int, int]] = defaultdict(lambda: defaultdict(int))
    ob = ""
    last = 0
    skip_next = False
    for line in path.read_text(errors="replace").splitlines():
        if not line or line[0] in "#":
            continue
        m = re.match(r"^(c?ob|c?fn|c?fl|fi|fe)=(?:\((\d+)\))?\s*(.*)$", line)
        if m:
            key, ident, name = m.groups()
            base = key.lstrip("c") if key not in ("fi", "fe") else "fl"
            if ident is not None:
                if name:
                    names[base][ident] = name
                name = names[base].get(ident, name)
            if key == "ob":
                ob = name
            continue
        if line.startswith("calls="):
            skip_next = True
            continue
        if line[0] in "+-*0123456789":
            fields = line.split()
            tok = fields[0]
            if tok == "*":
                addr = last
            elif tok[0] in "+-":
                addr = last + int(tok, 16) if tok[1:2] == "0x" else last + int(tok, 0)
            else:
                addr = int(tok, 16) if tok.startswith("0x") else int(tok)
            last = addr
            if skip_next:
                skip_next = False
                continue
            if len(fields) > 1:
                cost[ob][addr] += int(fields[1])
    return cost


LANES = {"xmm": 128, "ymm": 256, "zmm": 512}
CLASSES = [
    ("fma", re.compile(r"^v?f(n)?m(add|sub)")),
    ("mul", re.compile(r"^v?mul[ps][sd]$")),
    ("div", re.compile(r"^v?div[ps][sd]$")),
    ("sqrt", re.compile(r"^v?sqrt[ps][sd]$")),
    ("rsqrt/rcp", re.compile(r"^v?(rsqrt|rcp)[ps][sd]")),
    ("add/sub", re.compile(r"^v?(add|sub)[ps][sd]$")),
]


def classify(mnemonic: str, operands: str) -> Tuple[str, int]:
    """(class, lanes) of a floating-point arithmetic instruction, else ("", 0)."""
    for name, pattern in CLASSES:
        if pattern.match(mnemonic):
            packed = re.search(r"p[sd]$", mnemonic) or re.search(r"p[sd]$", mnemonic.rstrip("xyz"))
            width = 32 if re.search(r"(ps|ss)$", mnemonic) else 64
            if not packed:
                return name, 1
            reg = re.search(r"%(xmm|ymm|zmm)", operands)
            return name, LANES[reg.group(1)] // width if reg else 1
    return "", 0


def disassemble(obj: str, addresses: List[int]) -> Dict[int, Tuple[str, str]]:
    """Mnemonic and operands at each address (callgrind gives addresses
    relative to the object, as objdump numbers them), from objdump over the
    clusters of addresses (a library like libtorch_cpu is too big to
    disassemble whole)."""
    out: Dict[int, Tuple[str, str]] = {}
    addresses = sorted(addresses)
    clusters = [[addresses[0], addresses[0]]]
    for a in addresses[1:]:
        if a - clusters[-1][1] > 4096:
            clusters.append([a, a])
        clusters[-1][1] = a
    for lo, hi in clusters:
        r = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={lo:#x}",
                            f"--stop-address={hi + 16:#x}", obj], capture_output=True, text=True, check=True)
        for line in r.stdout.splitlines():
            m = re.match(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$", line)
            if m:
                out[int(m.group(1), 16)] = (m.group(2), m.group(3))
    return out


def count(case: str, numel: int, steps: int, tmp: Path) -> dict:
    per_obj = parse_callgrind(run_callgrind(case, numel, steps, tmp))
    total = sum(sum(c.values()) for c in per_obj.values())
    flops: Dict[str, float] = defaultdict(float)
    for obj, costs in per_obj.items():
        if not obj.startswith("/") or not Path(obj).exists():
            continue
        hot = {a: n for a, n in costs.items() if n >= steps}  # executed at least once a step
        if not hot:
            continue
        dis = disassemble(obj, list(hot))
        for off, n in hot.items():
            mnem, ops = dis.get(off, ("", ""))
            cls, lanes = classify(mnem, ops)
            if cls:
                flops[cls] += n * lanes
    denom = numel * steps
    per = {k: v / denom for k, v in flops.items()}
    fma = per.get("fma", 0.0)
    return dict(case=case, instructions_per_element=total / denom,
                flops_per_element={k: per[k] for k in sorted(per)},
                # a fused multiply-add is one multiplication and one addition
                multiplications=per.get("mul", 0.0) + fma, additions=per.get("add/sub", 0.0) + fma,
                divisions=per.get("div", 0.0), square_roots=per.get("sqrt", 0.0),
                reciprocal_estimates=per.get("rsqrt/rcp", 0.0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--numel", type=int, default=1 << 20)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--only", nargs="*", choices=list(CASES))
    ap.add_argument("--keep", type=Path, help="keep callgrind's output files in this folder")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.numel, args.steps)
        return 0
    for tool in ("valgrind", "objdump"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for case in args.only or CASES:
            row = count(case, args.numel, args.steps, work)
            rows.append(row)
            print(f"{case:20s} {row['instructions_per_element']:6.2f} instructions, "
                  f"{row['multiplications']:.2f} mul, {row['additions']:.2f} add, "
                  f"{row['divisions']:.2f} div, {row['square_roots']:.2f} sqrt, "
                  f"{row['reciprocal_estimates']:.2f} rsqrt/rcp per element", flush=True)
    import torch

    report = dict(numel=args.numel, steps=args.steps, machine=platform.machine(),
                  cpu_capability=torch.backends.cpu.get_cpu_capability(), torch=torch.__version__,
                  valgrind=subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip(),
                  rows=rows)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
