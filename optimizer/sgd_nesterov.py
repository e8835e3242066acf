"""SGD with Nesterov momentum (momentum from --momentum, weight decay from --weight_decay), the optimiser of
wespeaker's ResNet34 recipe (momentum 0.9, weight decay 1e-4)."""
import torch

OPTIONS = {"momentum": (float, 0.9, "momentum of Nesterov SGD")}


def Optimizer(parameters, lr: float, weight_decay: float, momentum: float = 0.9, **kwargs) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum over `parameters`."""
    print(f"Initialised SGD optimizer with Nesterov momentum {momentum}")
    return torch.optim.SGD(parameters, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
