# Table 6 row "SN": Switchable Normalization in every
# layer, statistics not synchronized across GPUs.
_base_ = './deeplabv3_r50-d8_syncbn_8xb2-80k_ade20k-512x512.py'

norm_cfg = dict(type='SN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
