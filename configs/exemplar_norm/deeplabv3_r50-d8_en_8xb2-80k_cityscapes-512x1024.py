# Table 6 row "EN": Exemplar Normalization in every layer (backbone, ASPP decode head and
# auxiliary head), statistics not synchronized across GPUs. The BN-pretrained ImageNet
# backbone loads into the EN layers (docs/method.md#loading-a-batchnorm-checkpoint).
_base_ = './deeplabv3_r50-d8_syncbn_8xb2-80k_cityscapes-512x1024.py'

norm_cfg = dict(type='EN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
