"""Data sources for training: the Cityscapes folder layout and a synthetic street-scene generator.

``cityscapes.CityscapesSource`` is a random-access (grain) source over ``leftImg8bit``/``gtFine``;
``synthetic.write_synthetic_cityscapes`` writes scenes in that same layout, so the demo and the
tests go through the loader that real data uses.
"""
