"""Optional plug-ins for mmdetection, mmpretrain and timm; each imports its framework lazily.

Import the one you need (``lossmix_ext.integrations.mmdet``, ``lossmix_ext.integrations.mmpretrain``,
``lossmix_ext.integrations.timm``); this package itself imports none of them.
"""
