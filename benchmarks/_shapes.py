"""Parameter layouts for the step-time benchmark.

Two layouts per target size:

* ``single``: one flat tensor of ``numel`` elements (the best case for every
  path: one tensor, no per-tensor overhead);
* ``transformer``: the parameter list of a stack of GPT-2-like blocks, many
  tensors of very different sizes (what an optimizer meets in practice, and
  where the for-loop path pays a launch or dispatch per tensor).

Plus the fixed configuration of the project's performance target: 12.6M fp32
elements in 28 transformer-shaped tensors (d=512, 4 layers of 7 tensors).
"""

from __future__ import annotations

from typing import List, Tuple

Shape = Tuple[int, ...]

#: Model widths tried, smallest first (GPT-2 uses 768..1600; the small ones
#: serve the 1M-element end of the sweep, the big ones the 1B end).
D_MODELS = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
#: Aim for at least this many layers (GPT-2 small has 12), so the list stays
#: "many tensors" (~100) at every size.
MIN_LAYERS = 8


def gpt2_block(d: int) -> List[Shape]:
    """The 12 parameter tensors of one GPT-2 block of width ``d`` (12 d^2 + 13 d elements)."""
    return [
        (d,), (d,),              # ln_1 weight, bias
        (3 * d, d), (3 * d,),    # attention qkv weight, bias
        (d, d), (d,),            # attention output projection weight, bias
        (d,), (d,),              # ln_2 weight, bias
        (4 * d, d), (4 * d,),    # mlp fc weight, bias
        (d, 4 * d), (d,),        # mlp projection weight, bias
    ]


def numel_of(shapes: List[Shape]) -> int:
    total = 0
    for shape in shapes:
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def transformer_shapes(target: int) -> Tuple[List[Shape], int, int]:
    """GPT-2-like shapes whose total size is close to ``target`` elements.

    Picks the widest ``d`` that still gives at least ``MIN_LAYERS`` layers (so
    the tensors are as large as a real model of that size would have), then the
    layer count nearest the target. Returns ``(shapes, d, layers)``; the total
    is within about 10 % of ``target`` (exactly the nearest multiple of a block).
    """
    per_layer = {d: numel_of(gpt2_block(d)) for d in D_MODELS}
    candidates = [d for d in D_MODELS if round(target / per_layer[d]) >= MIN_LAYERS]
    d = candidates[-1] if candidates else D_MODELS[0]
    layers = max(1, round(target / per_layer[d]))
    return gpt2_block(d) * layers, d, layers


def target_shapes() -> List[Shape]:
    """The performance target's fixed layout: d=512, 4 layers of 7 tensors.

    (3d,d), (3d,), (d,d), (d,), (4d,d), (4d,), (d,4d) per layer:
    4 * (12 d^2 + 8 d) = 12,599,296 elements in 28 tensors.
    """
    d = 512
    layer = [(3 * d, d), (3 * d,), (d, d), (d,), (4 * d, d), (4 * d,), (d, 4 * d)]
    shapes = layer * 4
    assert len(shapes) == 28 and numel_of(shapes) == 12_599_296
    return shapes
