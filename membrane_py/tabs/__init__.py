"""The PySide6 window: one module per workflow tab. Tabs build job specs, hand them to the
worker process through :mod:`membrane_py.tabs.jobs_controller` and render its events; they
never run numerical work themselves (only small reads for previews)."""
