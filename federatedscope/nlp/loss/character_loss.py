"""FS's ``criterion.type: character_loss`` (from FedEM): cross-entropy over LEAF's 80 symbols,
each class weighted by 8 x its letter-frequency weight (1 for symbols FedEM lists none for)."""
import torch

from federatedscope.nlp.dataset.shakespeare import ALL_LETTERS
from federatedscope.register import register_criterion

# FedEM's letter weights (utils/constants.py there), as FS uses them
CHARACTERS_WEIGHTS = {
    '\n': 0.43795308843799086, ' ': 0.042500849608091536, ',': 0.6559597911540539,
    '.': 0.6987226398690805, 'I': 0.9777491725556848, 'a': 0.2226022051965085,
    'c': 0.813311655455682, 'd': 0.4071860494572223, 'e': 0.13455606165058104,
    'f': 0.7908671114133974, 'g': 0.9532922255751889, 'h': 0.2496906467588955,
    'i': 0.27444893060347214, 'l': 0.37296488139109546, 'm': 0.569937324017103,
    'n': 0.2520734570378263, 'o': 0.1934141300462555, 'r': 0.26035705948768273,
    's': 0.2534775933879391, 't': 0.1876471355731429, 'u': 0.47430062920373184,
    'w': 0.7470615815733715, 'y': 0.6388302610200002,
}
WEIGHT_SCALE = 8.0


def class_weights(device="cpu") -> torch.Tensor:
    w = torch.ones(len(ALL_LETTERS))
    for ch, v in CHARACTERS_WEIGHTS.items():
        w[ALL_LETTERS.index(ch)] = v
    return (w * WEIGHT_SCALE).to(device)


def create_character_loss(criterion_type, device="cpu", reduction: str = "mean"):
    """FS's call convention ``func(type, device)``; ``reduction`` lets a trainer that sums
    per-sample losses ask for 'sum' (weighted sum; 'mean' divides by the summed weights)."""
    if str(criterion_type).lower() != "character_loss":
        return None
    return torch.nn.CrossEntropyLoss(weight=class_weights(device), reduction=reduction)


register_criterion("character_loss", create_character_loss)
