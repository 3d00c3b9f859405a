"""The usual unfused ways of writing the distillation loss, used as speed baselines (demo, benchmarks)."""
import torch
import torch.nn.functional as F


def eager_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """What most trainers write: log_softmax twice, then kl_div (batchmean) times T^2."""
    log_ps = F.log_softmax(student / temperature, dim=-1)
    log_pt = F.log_softmax(teacher / temperature, dim=-1)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * temperature**2


_compiled = {}


def compiled_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """`eager_kl` through torch.compile (one compiled function per process)."""
    if "kl" not in _compiled:
        _compiled["kl"] = torch.compile(eager_kl, dynamic=False)
    return _compiled["kl"](student, teacher, temperature)
