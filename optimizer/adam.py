"""Adam optimizer plug-in (default betas and eps, as in the original)."""
import torch


def Optimizer(parameters, lr: float, weight_decay: float, **kwargs) -> torch.optim.Optimizer:
    """Adam over `parameters` with the given learning rate and weight decay."""
    print("Initialised Adam optimizer")
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
