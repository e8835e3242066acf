"""StepLR plug-in: multiply the LR by lr_decay every test_interval epochs."""
import torch


def Scheduler(optimizer, test_interval: int, lr_decay: float, **kwargs):
    """Return (StepLR scheduler, 'epoch'): stepped once after every epoch."""
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=test_interval, gamma=lr_decay)
    print("Initialised step LR scheduler")
    return scheduler, "epoch"
