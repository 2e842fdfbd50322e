"""Data for training and evaluation: random-access sources and the grain pipeline.

Sources (``sources.build_source(dataset, root, split)``): ``cityscapes.CityscapesSource``
(folder layout), ``camvid.CamVidSource`` (SegNet layout or split lists, 11 classes),
``tfds_cityscapes.TfdsCityscapesSource`` (the TFDS ``cityscapes`` builder, array_record) and the
synthetic street scenes of ``synthetic`` (written in the Cityscapes layout, so the demo and the
tests go through the loader that real data uses).  ``pipeline`` turns a source into augmented,
sharded, resumable train batches and padded eval batches; ``palette`` colours predictions.
"""
