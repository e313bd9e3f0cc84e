from django.apps import AppConfig


class CatalogConfig(AppConfig):
    name = 'catalog'
    verbose_name = 'Catalog (replica of the library)'
    default_auto_field = 'django.db.models.BigAutoField'
