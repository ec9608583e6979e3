"""ConvNet2 as FederatedScope defines it: 2 x [conv5x5(pad 2) -> BatchNorm -> ReLU -> maxpool2],
32/64 channels, dropout, FC ``hidden``, FC ``class_num``. BN buffers (running stats and the int64
``num_batches_tracked``) are part of the state and travel with the model.

Registered with FS's ``register_model`` under ``convnet2``."""
import torch
from torch import nn

from federatedscope.register import register_model


class ConvNet2(nn.Module):
    def __init__(self, in_channels: int, h: int = 28, w: int = 28, hidden: int = 2048,
                 class_num: int = 10, dropout: float = 0.0, use_bn: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.use_bn = use_bn
        if use_bn:
            self.bn1 = nn.BatchNorm2d(32)
            self.bn2 = nn.BatchNorm2d(64)
        self.fc1 = nn.Linear((h // 2 // 2) * (w // 2 // 2) * 64, hidden)
        self.fc2 = nn.Linear(hidden, class_num)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.maxpool(self.relu(self.bn1(x) if self.use_bn else x))
        x = self.conv2(x)
        x = self.maxpool(self.relu(self.bn2(x) if self.use_bn else x))
        x = nn.Flatten()(x)
        x = nn.functional.dropout(x, p=self.dropout, training=self.training)
        x = self.relu(self.fc1(x))
        x = nn.functional.dropout(x, p=self.dropout, training=self.training)
        return self.fc2(x)


def call_convnet2(model_config, input_shape):
    """FS's ``register_model`` convention: ConvNet2 for ``model.type convnet2``, else None.
    ``input_shape`` is (channels, height, width); ``model.in_channels`` overrides the channels."""
    if model_config.type.lower() != "convnet2":
        return None
    c, h, w = input_shape
    return ConvNet2(in_channels=model_config.in_channels or c, h=h, w=w,
                    hidden=model_config.hidden, class_num=model_config.out_channels,
                    dropout=model_config.dropout)


register_model("convnet2", call_convnet2)
