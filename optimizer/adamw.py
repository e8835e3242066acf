"""AdamW: Adam with weight decay applied to the weights directly (decoupled), at --weight_decay."""
import torch


def Optimizer(parameters, lr: float, weight_decay: float, **kwargs) -> torch.optim.Optimizer:
    """AdamW over `parameters` with the given learning rate and decoupled weight decay (default betas and eps)."""
    print("Initialised AdamW optimizer")
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
