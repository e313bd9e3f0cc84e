"""The master's meta_function, written for django-cqrs (it calls it with these keywords)."""


def shop_meta(obj=None, instance_data=None, previous_data=None, signal_type=None, **kwargs):
    return {'tenant': 'acme', 'signal': str(signal_type), 'has_data': instance_data is not None,
            'model': type(obj).__name__}
