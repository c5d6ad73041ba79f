# The EN config with the BN member's batch statistics synchronized across the 8 GPUs, so
# that 16 images stand behind them instead of 2 (not a setting of the paper;
# docs/method.md#synchronization-across-processes); the rest as in the EN config.
_base_ = './deeplabv3_r50-d8_en_8xb2-80k_ade20k-512x512.py'

norm_cfg = dict(type='SyncEN', requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))
