"""limiquantix-tui: the operators' terminal dashboard (Textual; talks only to the controller's API)."""

from .app import LimiQuantixApp
from .client import ApiError, ControllerClient
from .config import TuiConfig

__all__ = ["ApiError", "ControllerClient", "LimiQuantixApp", "TuiConfig"]
