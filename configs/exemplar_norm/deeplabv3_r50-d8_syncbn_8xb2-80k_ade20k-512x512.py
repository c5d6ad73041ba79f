# The paper's segmentation setting (paper Sec. 4.4; docs/method.md#paper-settings) with
# the synchronized baseline:
# DeepLabV3 ResNet50-D8 (output stride 8), 8 GPUs x 2 images, poly LR from 0.02, 80k iters.
# Table 6 row "SyncBN"; the GN, SN and EN configs inherit this file and swap the norm.
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-80k_ade20k-512x512.py'

custom_imports = dict(imports=['en_seg'], allow_failed_imports=False)

train_dataloader = dict(batch_size=2)
optim_wrapper = dict(optimizer=dict(lr=0.02))
