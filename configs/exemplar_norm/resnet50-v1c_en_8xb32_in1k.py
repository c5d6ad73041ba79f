# Table 2 row "EN": ImageNet pre-training with Exemplar Normalization in every layer; the
# recipe is the BN config's (docs/method.md#paper-settings). Its checkpoint starts the
# EN DeepLabV3 configs (README.md, "The paper's pipeline").
_base_ = './resnet50-v1c_bn_8xb32_in1k.py'

model = dict(backbone=dict(norm_cfg=dict(type='EN', requires_grad=True)))
