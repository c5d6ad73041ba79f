"""``en_seg::`` config paths, as ``mmseg::``, e.g.
``_base_ = 'en_seg::exemplar_norm/deeplabv3_r50-d8_en_8xb2-80k_ade20k-512x512.py'``.

mmengine's ``Config`` resolves ``<scope>::<path>`` to ``<package>/.mim/configs/<path>``
(the package carries its configs there, see setup.py) for the scopes of its table
``mmengine.config.utils.MODULE2PACKAGE`` alone, and has no other way to add one: this
module adds ``en_seg``. Relative ``_base_`` paths inside the loaded file resolve beside
it, as in the checkout.

The entry takes effect on ``import en_seg``, which has to come before the config is read:
mmengine resolves ``_base_`` before it imports a config's ``custom_imports``. Our tools
import en_seg first; a script of your own does it before ``Config.fromfile``.

The value mmengine looks the directory up with is this module's name, not the
distribution ``en-seg``: for a distribution mmengine takes ``<site-packages>/en_seg``,
which an editable install does not have, and for a module that is not a distribution it
takes the directory of the module's file, which is en_seg's wherever it was imported from.
"""
from mmengine.config.utils import MODULE2PACKAGE

MODULE2PACKAGE.setdefault('en_seg', __name__)
