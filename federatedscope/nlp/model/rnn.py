"""FS's character LSTM (``model.type: lstm``): embedding -> stacked LSTM -> linear decoder, the
prediction for the last position only (next character)."""
import torch
from torch import nn


class LSTM(nn.Module):
    def __init__(self, in_channels: int, hidden: int, out_channels: int, n_layers: int = 2,
                 embed_size: int = 8, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.hidden, self.out_channels = in_channels, hidden, out_channels
        self.embed_size, self.n_layers = embed_size, n_layers
        # embed_size 0 (FS): the input is already a [B, T, in_channels] float sequence
        self.encoder = nn.Embedding(in_channels, embed_size) if embed_size else None
        self.rnn = nn.LSTM(input_size=embed_size or in_channels, hidden_size=hidden,
                           num_layers=n_layers, batch_first=True,
                           dropout=dropout if n_layers > 1 else 0.0)
        self.decoder = nn.Linear(hidden, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder is not None:
            x = self.encoder(x)
        out, _ = self.rnn(x)
        return self.decoder(out[:, -1, :])  # [B, out_channels]
