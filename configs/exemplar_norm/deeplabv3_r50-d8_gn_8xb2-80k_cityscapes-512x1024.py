# Table 6 row "GN": GroupNorm with 32 groups in every layer;
# batch-independent, so nothing to synchronize.
_base_ = './deeplabv3_r50-d8_syncbn_8xb2-80k_cityscapes-512x1024.py'

norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
