"""Reading what Exemplar Normalization learned: its ratios λ per layer, class and image.

One module per job; import what you need from it (kept out of this file so that
``import en_seg``, which registers the training hook, needs neither matplotlib nor
scikit-learn):

- :mod:`.layers`: find a model's EN layers, with the names the model gives them.
- :mod:`.recorder`: forward hooks that record every EN layer's ratios (model unchanged).
- :mod:`.weighting`: ground-truth pixel shares and class-weighted means (paper Fig. 6).
- :mod:`.table`: the per-image ratio table and its tidy CSV form.
- :mod:`.collect`: run an mmseg segmentor over a dataloader into a table.
- :mod:`.loading`: build that segmentor and dataloader from a config and a checkpoint.
- :mod:`.tsne`: the t-SNE embedding of every image's ratios (paper Fig. 8).
- :mod:`.plots`: the figures (paper Figs. 4-8), PNG and SVG.
- :mod:`.hook`: ``ENRatioLoggerHook``, which logs the ratios during training (Fig. 5).
- :mod:`.dynamics`: read the ratios that hook logged.
- :mod:`.report`: write the table, the JSON summary and every figure of a dataset split.
"""
