"""The Discord layer: thin command and button handlers that call the services and render."""
