# ImageNet pre-training of the segmentation backbone, Table 2 row "BN" (paper Sec. 4.1;
# docs/method.md#paper-settings). mmpretrain's ResNet50 recipe, kept as it is: 8 GPUs x 32
# images, SGD (LR 0.1, momentum 0.9, weight decay 1e-4), MultiStepLR dividing the LR by 10
# at epochs 30, 60 and 90 of 100 epochs, RandomResizedCrop 224 + horizontal flip for
# training, one 224 centre crop of the 256-short-side image for evaluation. The SN and EN
# configs inherit this file and swap the norm.
_base_ = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'

custom_imports = dict(imports=['en_seg'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        # mmseg's ResNetV1c, the backbone class of configs/exemplar_norm/deeplabv3_*.py,
        # in its classification geometry (strides 2, no dilation, last stage out), so the
        # checkpoint's backbone keys are those of DeepLab's. mmpretrain's own ResNetV1c
        # has the same layers but names the stem stem.0.conv / stem.0.bn, where mmseg's
        # has stem.0 / stem.1.
        type='mmseg.ResNetV1c',
        norm_cfg=dict(type='BN', requires_grad=True),
        # The paper starts every normalizer at gamma = 1, beta = 0. The default (True)
        # initializes the last norm of every bottleneck, submodules included, with the
        # constant 0: for EN all K rows of its (K, C) gamma and its ratio branch's
        # convolution and first linear layer, whose gradients are then 0 for good, so
        # those ratios could never depend on the sample. BN gets gamma = 1 from the
        # backbone's Constant init_cfg, SN and EN from their own reset_parameters;
        # convolutions get the Kaiming init.
        zero_init_residual=False))
