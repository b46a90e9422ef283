"""Dataset adapters: one module per source, all yielding `Example`s (base.py). KIND -> adapter class:

    coco    MS-COCO instances (segmentation, detection)           coco.py
    ade20k  ADE20K SceneParsing (segmentation)                     ade20k.py
    nyuv2   NYU Depth v2, labeled .mat or folder format (depth)    nyuv2.py
    pets    Oxford-IIIT Pets (segmentation, classification)        pets.py
    synth   scenes from `icv-data synth` (all four tasks)          synth.py

    from icv_deploy.training.datasets import open_source
    for example in open_source("pets", "/data/oxford-iiit-pet", split="test").examples(["classification"]):
        ...
"""

from .ade20k import Ade20kAdapter
from .base import Adapter, Example, ExampleRef, open_source
from .coco import CocoAdapter
from .nyuv2 import Nyuv2Adapter
from .pets import PetsAdapter
from .synth import SynthAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    a.kind: a for a in (CocoAdapter, Ade20kAdapter, Nyuv2Adapter, PetsAdapter, SynthAdapter)
}

__all__ = ["ADAPTERS", "Adapter", "Example", "ExampleRef", "open_source"]
