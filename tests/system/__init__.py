"""System tests: the app under real gunicorn and real `deliberate worker` processes."""
