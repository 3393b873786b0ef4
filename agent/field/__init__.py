"""The box's own hardware and service manager: LEDs, serial console, systemd."""
