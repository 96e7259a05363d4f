"""Optional plug-ins for mmdetection, mmpretrain, timm and torchvision; each imports its framework lazily.

Import the one you need (``lossmix_ext.integrations.mmdet``, ``lossmix_ext.integrations.mmpretrain``,
``lossmix_ext.integrations.timm``, ``lossmix_ext.integrations.torchvision``); this package itself
imports none of them. ``lossmix_ext.integrations.normed`` (mmdetection's ``NormedLinear`` /
``NormedConv2d`` in plain torch) needs no framework.
"""
