"""`tuneforge webui`: a Gradio app that is a client of the CLI (it writes configs and launches `tuneforge` jobs)."""

import os

from tuneforge.errors import UserError


def require_gradio() -> None:
    """Check the [webui] extra is installed; Gradio's usage analytics stay off unless the user turned them on."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("webui: Gradio is not installed; pip install 'tuneforge[webui]'") from None
