"""The command-line tools of csfcn, one module per command, on top of every library.

The libraries below (csfcn, kernels, jax_csfcn, torch_deploy, convert) import only downward and
never import a tool; a tool may import any library and other tools. The commands the project
promised under library names (``python -m jax_csfcn.train``, ``python -m torch_deploy.predict``,
``python -m torch_deploy.benchmark``) are launcher packages holding only a ``__main__.py`` that
runs the tool here (docs/architecture.md, "Package layering").
"""
