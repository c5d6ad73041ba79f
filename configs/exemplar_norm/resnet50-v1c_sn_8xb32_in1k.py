# Table 2 row "SN": ImageNet pre-training with Switchable Normalization in every layer;
# the recipe is the BN config's (docs/method.md#paper-settings).
_base_ = './resnet50-v1c_bn_8xb32_in1k.py'

model = dict(backbone=dict(norm_cfg=dict(type='SN', requires_grad=True)))
