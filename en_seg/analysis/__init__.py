"""Reading what Exemplar Normalization learned, its ratios λ per layer, class and image;
may import :mod:`en_seg.models`, mmengine, matplotlib and scikit-learn, never
:mod:`en_seg.engine`.

One module per job; import what you need from it (kept out of this file so that
``import en_seg``, whose training hook uses :mod:`.recording`, needs neither matplotlib
nor scikit-learn):

- :mod:`.recording`: find a model's EN layers, record their ratios with forward hooks
  (model unchanged), and run an mmseg segmentor over a dataloader into a table.
- :mod:`.ratio_table`: the per-image ratio table, its tidy CSV form, and the ground-truth
  pixel shares and class-weighted means (paper Fig. 6).
- :mod:`.figures`: the t-SNE embedding (paper Fig. 8) and the figures (Figs. 4-8).
- :mod:`.dynamics`: the scalar names ``ENRatioLoggerHook`` logs, and reading them back.
- :mod:`.report`: write the table, the JSON summary and every figure of a dataset split.
"""
