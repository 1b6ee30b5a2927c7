"""Only the optional C extension lives here; everything else is in pyproject.toml."""

from setuptools import Extension, setup

# The fused CPU scoring kernel (index/_fused.c). Optional: without a C compiler the install still
# succeeds and the index uses its torch path (tessera.index.kernels.fused_kernel() == "torch").
setup(
    ext_modules=[
        Extension(
            "tessera.index._fused",
            sources=["index/_fused.c"],
            optional=True,
            extra_compile_args=["-O3", "-pthread"],
            extra_link_args=["-pthread"],
        )
    ]
)
