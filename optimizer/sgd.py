"""SGD plug-in with momentum 0.9, as in the original."""
import torch


def Optimizer(parameters, lr: float, weight_decay: float, **kwargs) -> torch.optim.Optimizer:
    """SGD with momentum 0.9 over `parameters`."""
    print("Initialised SGD optimizer")
    return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)
