# Table 6 row "EN": Exemplar Normalization in every layer (backbone, ASPP decode head and
# auxiliary head), statistics not synchronized across GPUs. The BN-pretrained ImageNet
# backbone loads into the EN layers (docs/method.md#loading-a-batchnorm-checkpoint).
_base_ = './deeplabv3_r50-d8_syncbn_8xb2-80k_ade20k-512x512.py'

norm_cfg = dict(type='EN', requires_grad=True)
model = dict(
    # Trained from scratch (pretrained=None), mmseg's ResNet would zero each bottleneck's
    # last norm layer with all its submodules, EN's ratio branch included, whose
    # gradients would then stay 0 (docs/method.md#initialization-in-openmmlab).
    backbone=dict(norm_cfg=norm_cfg, zero_init_residual=False),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
