"""The admin dashboard (``/dashboard``): read-only pages over the admin views."""
