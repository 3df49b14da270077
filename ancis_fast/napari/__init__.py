"""The napari plugin: the **Segment cells** dock widget (:mod:`.widget`) and sample images
(:mod:`.samples`), registered by ``ancis_fast/napari.yaml`` (``pip install .[napari]``).

Nothing here is imported by ``import ancis_fast``: Qt and napari load only when napari
opens the plugin. :mod:`.planes` and :mod:`.settings` need neither.
"""
