"""The network's coordinator: primary-module training, backbone publishing, registry, gateway."""
