"""Built-in critics; importing this package registers each one by name."""

from reward_services import vlm_judge  # noqa: F401
from reward_services.critics import motion, perceptual, safety, toy  # noqa: F401
from reward_services.critics import ablation  # noqa: F401
