"""`make image-check`: the container image's promises, checked without a Docker engine.

No image is built on a machine without a Docker engine (and Docker Hub may be out of
reach), so the promises the Dockerfile makes (dependencies installed only from the
hash-locked files, non-root, a read-only root filesystem, audit on standard output)
would stay unchecked words. This package reproduces the Dockerfile's own steps in a
root directory assembled from this machine's Debian (standing in for the base image),
runs the image's entrypoint in it as the image's user with the root read-only, and
reports what held, what did not, and what could not be checked here.

It downloads packages from PyPI, so it is not part of `make test`.
"""
