#!/usr/bin/env python3
"""Show that the host test of the CUDA kernels bites: plant one bug at a time
in a copy of the kernel sources (csrc/), build the host test against the copy
(tests/cpp/build.py, exact variant, ASan + UBSan) and run it. Every planted
bug must make it fail. Not run by CI (about a minute per bug on 2 cores).

    python scripts/plant_bugs.py [--only NAME ...] [--seed N] [--out FILE]

Writes a Markdown table of the bugs and how each was caught.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("kernels_host_build", REPO / "tests" / "cpp" / "build.py")
host_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(host_build)


@dataclass
class Bug:
    name: str
    what: str
    path: str  # under csrc/
    old: str   # must occur exactly once
    new: str


BUGS: List[Bug] = [
    Bug("tail-off-by-one", "the vector path's tail also runs element n",
        "cuda/rule_functor.h", "if (i < n) apply_one(", "if (i <= n) apply_one("),
    Bug("vector-loop-bound", "the vector loop rounds n / kILP up",
        "cuda/rule_functor.h", "const int n_vec = n / mta::kILP;",
        "const int n_vec = (n + mta::kILP - 1) / mta::kILP;"),
    Bug("scalar-path-stride", "the scalar path advances by kILP - 1 rows per iteration",
        "cuda/rule_functor.h", "base += pos.block_dim() * mta::kILP",
        "base += pos.block_dim() * (mta::kILP - 1)"),
    Bug("state-alignment-ignored", "a misaligned state does not send the chunk to the scalar path",
        "cuda/rule_functor.h", "aligned = aligned && mta::is_vec_aligned<S>(st[s]);",
        "aligned = aligned || !mta::is_vec_aligned<S>(st[s]);"),
    Bug("master-alignment-ignored", "a misaligned master weight does not send the chunk to the scalar path",
        "cuda/rule_functor.h", "(!kMaster || mta::is_vec_aligned<float>(mw))", "true"),
    Bug("inverse-scale-dropped", "the vector path forgets 1 / grad_scale",
        "cuda/rule_functor.h", "const float gf = to_float(gv.v[ii]) * inv_scale;",
        "const float gf = to_float(gv.v[ii]);"),
    Bug("validity-ignored", "a skipped step (valid = 0) still updates",
        "cuda/rule_functor.h", "if (scalars[kValid] == 0.0) return;", ""),
    Bug("bf16-truncates", "bfloat16 parameters are written rounded toward zero",
        "cuda/rule_functor.h", "return __float2bfloat16_rn(x);", "return __float2bfloat16_rz(x);"),
    Bug("carried-size-dropped", "a group carried into the next launch keeps the size of slot 0",
        "cuda/mta_plan.h", "meta.numel[0] = meta.numel[loc_tensor - 1];", ""),
    Bug("tensor-limit-off-by-one", "the per-launch tensor limit is one too high",
        "cuda/mta_plan.h", "const bool tensors_full = loc_tensor == Meta::kMaxTensors && last_chunk;",
        "const bool tensors_full = loc_tensor == Meta::kMaxTensors + 1 && last_chunk;"),
    Bug("chunk-index-per-launch", "a carried group's chunk index restarts in each launch",
        "cuda/mta_plan.h", "meta.block_to_chunk[loc_block] = static_cast<int>(chunk);",
        "meta.block_to_chunk[loc_block] = static_cast<int>(chunk % Meta::kMaxBlocks);"),
    Bug("chunk-offset-32-bit", "the chunk offset is computed in 32 bits",
        "cuda/mta_plan.h", "c.offset = static_cast<int64_t>(meta.block_to_chunk[block]) * kChunkSize;",
        "c.offset = meta.block_to_chunk[block] * static_cast<int>(kChunkSize);"),
    Bug("null-address-accepted", "a null address in a non-empty group is not refused",
        "cuda/mta_plan.h", "if (tensors[t][d] == nullptr) {", "if (false) {"),
    Bug("skips-count-overflow", "overflowed gradients are counted as bad losses",
        "advance.h", "if (a.skips != nullptr && !loss_ok) *a.skips += 1;",
        "if (a.skips != nullptr && !valid) *a.skips += 1;"),
    Bug("adaml-bias-correction", "AdamL divides w by the first bias correction",
        "rules/adaml.h", "inv_bc2(V(S(1) / scalars[kAdamLBiasCorrection2])),",
        "inv_bc2(V(S(1) / scalars[kAdamLBiasCorrection1])),"),
    Bug("adalo-sigma", "AdaLo's sigma is 1 / (1 + L)",
        "rules/adalo.h", "const double sigma = 1.0 / (2.0 + loss);", "const double sigma = 1.0 / (1.0 + loss);"),
    Bug("adaloss-decay-divided", "AdaLoss divides the weight decay by b too",
        "rules/adaloss.h", "if (decays) d = d + weight_decay * p;", "if (decays) d = d + weight_decay * p / b;"),
    # The NVRTC build's launcher (tests/cpp/test_nvrtc_launch.cpp).
    Bug("nvrtc-arch-minor-dropped", "the NVRTC launcher picks the code by the major version only",
        "cuda/nvrtc_launch.cpp", "const int arch = major * 10 + minor;", "const int arch = major * 10 + 0 * minor;"),
    Bug("nvrtc-stale-kernels", "replacing an architecture's code keeps its old kernels",
        "cuda/nvrtc_launch.cpp",
        'kernels_.erase(kernels_.lower_bound({arch, ""}), kernels_.lower_bound({arch + 1, ""}));', ""),
    Bug("nvrtc-one-block-short", "the NVRTC launcher launches one block too few",
        "cuda/nvrtc_launch.cpp", "static_cast<unsigned>(n_blocks), mta::kBlockSize",
        "static_cast<unsigned>(n_blocks - 1), mta::kBlockSize"),
    Bug("nvrtc-advance-many-threads", "the NVRTC advance kernel is launched with a warp",
        "cuda/nvrtc_launch.cpp", "launch(AdvanceKernelName<Group>::value, Group::kOp, 1, 1,",
        "launch(AdvanceKernelName<Group>::value, Group::kOp, 1, 32,"),
    Bug("nvrtc-f16-named-bf16", "the kernel list names a float16 kernel as bfloat16",
        "cuda/kernel_list.h", "UPDATE(name##_f16, Half, Rule, Args, false, float, false)",
        "UPDATE(name##_bf16x, Half, Rule, Args, false, float, false)"),
    Bug("nvrtc-sr-s16-misnamed", "the kernel list names the rounded-parameter bf16-state kernel as bf16-state only",
        "cuda/kernel_list.h", "UPDATE(name##_bf16_sr_s16, BFloat16, Rule, Args, false, uint16_t, true)",
        "UPDATE(name##_bf16_s16x, BFloat16, Rule, Args, false, uint16_t, true)"),
    # Stochastic rounding (csrc/rounding.h) in the kernel.
    Bug("rounding-param-stream", "rounded parameters take the first state's bits",
        "cuda/rule_functor.h", "keys.bits(kStates, index)", "keys.bits(0, index)"),
    Bug("rounding-chunk-local-index", "the vector path hashes the element's index in its chunk",
        "cuda/rule_functor.h",
        "const uint64_t index = base_index + static_cast<uint64_t>(v * mta::kILP + ii);",
        "const uint64_t index = static_cast<uint64_t>(v * mta::kILP + ii);"),
    Bug("rounding-scalar-index", "the scalar path hashes the next element's index",
        "cuda/rule_functor.h",
        "const uint64_t index = base_index + static_cast<uint64_t>(i);\n            p[i]",
        "const uint64_t index = base_index + static_cast<uint64_t>(i) + 1;\n            p[i]"),
    Bug("rounding-state-to-nearest", "bfloat16 states are rounded half up, not stochastically",
        "cuda/rule_functor.h", "return rounding::bf16_stochastic(x, keys.bits(s, index));",
        "return rounding::bf16_stochastic(x, 0x80000000u);"),
    Bug("rounding-seed-ignored", "the hash leaves out the seed",
        "cuda/rule_functor.h", "keys = Keys(rounding_seed,", "keys = Keys(0,"),
    Bug("rounding-step-ignored", "the hash reads no step counter",
        "cuda/rule_functor.h", "static_cast<uint64_t>(*rounding_step)", "uint64_t{0}"),
    Bug("rounding-pair-ignored", "every stream pair hashes with pair 0's key",
        "rounding.h", "block[stream_pair(static_cast<uint32_t>(stream))]", "block[0]"),
    Bug("rounding-id-not-carried", "a group carried into the next launch loses its tensor id",
        "cuda/mta_plan.h", "meta.tensor_id[0] = meta.tensor_id[loc_tensor - 1];", ""),
]


def tidy(line: str) -> str:
    """A failure line without the temporary folder, process ids and addresses."""
    line = re.sub(r"\S*/csrc/", "csrc/", line.strip())
    line = re.sub(r"^==\d+==", "", line)
    line = re.sub(r" on address 0x[0-9a-f]+ at pc .*", "", line)
    return line[:200]


def first_failure(output: str) -> str:
    for line in output.splitlines():
        for marker in ("FAIL [", "ERROR: AddressSanitizer", "runtime error:"):
            if marker in line:
                return tidy(line)
    return tidy(output.strip().splitlines()[-1]) if output.strip() else "(no output)"


def plant(bug: Bug, seed: int, work: Path) -> dict:
    copy = work / bug.name / "csrc"
    shutil.copytree(REPO / "csrc", copy)
    target = copy / bug.path
    text = target.read_text()
    if text.count(bug.old) != 1:
        return dict(bug=bug, caught=False, how=f"pattern found {text.count(bug.old)} times in {bug.path}", seconds=0)
    target.write_text(text.replace(bug.old, bug.new))
    t0 = time.time()
    try:
        exes = host_build.build(copy, work / bug.name / "build", variants=("exact",))
    except RuntimeError as e:  # a bug that does not compile proves nothing
        return dict(bug=bug, caught=False, how="did not compile: " + str(e).splitlines()[-1][:160],
                    seconds=time.time() - t0)
    cmd = host_build.commands(exes, seed)["exact"] + ["stop"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=host_build.run_env(), timeout=900)
    out = r.stdout + r.stderr
    return dict(bug=bug, caught=r.returncode != 0, how=first_failure(out) if r.returncode else "passed",
                seconds=time.time() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="plant only these bugs (names)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, help="write the Markdown table here")
    args = ap.parse_args()
    bugs = [b for b in BUGS if not args.only or b.name in args.only]
    rows = []
    with tempfile.TemporaryDirectory(prefix="plant_bugs_") as tmp:
        # The unmodified sources must pass, or nothing below means anything.
        clean = plant(Bug("none", "no bug planted", "advance.h", "#pragma once", "#pragma once"), args.seed, Path(tmp))
        print(f"unmodified sources: {'FAILED' if clean['caught'] else 'passed'} ({clean['seconds']:.0f} s)", flush=True)
        if clean["caught"]:
            print(clean["how"])
            return 2
        for bug in bugs:
            res = plant(bug, args.seed, Path(tmp))
            rows.append(res)
            print(f"{bug.name:28s} {'caught' if res['caught'] else 'MISSED'} ({res['seconds']:.0f} s): {res['how']}", flush=True)
            shutil.rmtree(Path(tmp) / bug.name, ignore_errors=True)
    caught = sum(r["caught"] for r in rows)
    lines = [f"# Planted bugs in the CUDA kernel sources: {caught} of {len(rows)} caught",
             "", f"`python scripts/plant_bugs.py --seed {args.seed}` on {dt.date.today()}; the host test "
             "(tests/cpp/, exact variant, ASan + UBSan) against a copy of `csrc/` with one bug each.", "",
             "| bug | planted in | what | caught by |", "| --- | --- | --- | --- |"]
    for r in rows:
        b = r["bug"]
        how = r["how"].replace("|", "/") if r["caught"] else "**MISSED** " + r["how"]
        lines.append(f"| `{b.name}` | `csrc/{b.path}` | {b.what} | {how} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
