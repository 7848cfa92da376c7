"""Online text-to-image search: a Ray Serve app over the champion model and its corpus index.

Modules: ``index`` (vector search), ``searcher`` (one loaded model version), ``schemas`` (HTTP
contract), ``app`` (the Serve deployment), ``deploy`` (start/stop from a driver), ``client`` (HTTP
client for the CLI). Nothing is imported here so that ``import components.serving.client`` stays
free of Ray.
"""
