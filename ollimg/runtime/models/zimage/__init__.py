"""Z-Image (Tongyi-MAI/Z-Image-Turbo): configs and key maps shared by the torch and mlx backends."""
