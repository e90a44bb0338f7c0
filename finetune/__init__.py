"""Fine-tuning (classification) and semantic segmentation; the only package that imports mmsegmentation.

Importing the package first registers the `mmcv.ops` stand-in when mmcv has no compiled ops (mmcv-lite), so
every mmseg import below it, data-loader workers included, finds what it needs.
"""

from finetune.mmcv_compat import install as _install_mmcv_ops

_install_mmcv_ops()
