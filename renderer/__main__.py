from renderer.cli import entrypoint

entrypoint()
