"""Build and install lossopt-cuda.

This version installs the pure-Python optimizers (every path but ``fused``);
the compiled CPU/CUDA kernels are built here once they exist. Install with
``pip install --no-build-isolation .`` so the build sees the torch you already
installed (the kernels must be compiled against that exact torch).
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="lossopt-cuda",
    version="0.1.0",
    description="Loss-driven optimizers (AdaLo, AdamL, AdaLoss) for PyTorch",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["lossopt_cuda", "lossopt_cuda.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "numpy", "scikit-learn>=1.2", "tqdm"],
        "examples": ["scikit-learn>=1.2", "tqdm"],
        "benchmarks": ["matplotlib", "tqdm", "numpy", "scikit-learn>=1.2"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
