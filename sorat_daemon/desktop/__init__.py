"""The desktop side of sorat: the tray (its menu as data, the pystray and StatusNotifierItem backends, the
icons) and start at login. Only ``cli.py`` imports it; nothing here loads a GUI library until a tray is
wanted."""
