"""The node side (`gpu-extender agent`, one per GPU node): agent.py publishes the node's
inventory (inventory.py: NVML through nvml.py, NVLink in topology.py, model_cache.py); with the
device plugin on, deviceplugin.py hands each container the devices its plan names (admission.py
decides which pod the kubelet is admitting), and podresources.py reads back what the kubelet
really allocated."""
