"""Build the kernels ahead of time: ``python -m lossopt_cuda.build``.

For a container image or a cluster's shared environment: builds what this
machine can use and would otherwise build on first use, into the cache
(:mod:`lossopt_cuda._cache`; ``LOSSOPT_JIT=0`` does not stop this one): the
CPU kernels, and the CUDA kernels for the visible GPUs. ``--cuda-arch 8.0 9.0``
also compiles the CUDA kernels with NVRTC for the named architectures, with no
GPU needed (torch must be a CUDA build). Prints ``build_info()`` as JSON; exits
1 when kernels that were asked for could not be had, with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from . import _kernels, _nvrtc


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lossopt_cuda.build",
        description="Build lossopt_cuda's kernels for this machine now instead of on first use, "
                    "and print build_info().",
    )
    parser.add_argument("--cuda-arch", nargs="+", metavar="X.Y",
                        help="also compile the CUDA kernels with NVRTC for these GPU architectures "
                             "(compute capabilities such as 8.0 9.0); no GPU is needed")
    args = parser.parse_args(argv)
    if args.cuda_arch:
        try:
            for arch in args.cuda_arch:
                _nvrtc.arch_name(arch)
        except ValueError as err:
            parser.error(str(err))
    built = _kernels.build_now(args.cuda_arch)
    info = _kernels.build_info()
    print(json.dumps(info, indent=1))
    failed = [d for d, ok in built.items() if not ok and (d == "cpu" or args.cuda_arch)]
    for device in failed:
        print(f"lossopt_cuda.build: no {device.upper()} kernels: {_kernels.missing(device)}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
