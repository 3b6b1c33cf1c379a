"""The main job (`scripts/train.py`): settings, flags, the recipe, the
report. It uses the library; the library never imports it."""
